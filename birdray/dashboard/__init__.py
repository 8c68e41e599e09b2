"""The Streamlit dashboard: ``app.py`` is its entry file, run by path (``birdray dashboard``).

Nothing is imported here: the modules need Streamlit, and ``birdray`` itself must import without it.
"""
