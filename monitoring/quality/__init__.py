"""Live model quality: how well the served model does on the predictions that got feedback.

``results`` holds the value type (what rendering and pushing read); ``live`` computes it.
"""
