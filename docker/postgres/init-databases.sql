-- Runs once, when the postgres volume is first initialised (docker-entrypoint-initdb.d).
-- POSTGRES_DB (churn) holds the API's prediction log; MLflow gets its own database so its
-- alembic migrations never touch the application's tables.
CREATE DATABASE mlflow OWNER churn;
