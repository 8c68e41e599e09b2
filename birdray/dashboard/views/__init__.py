"""The dashboard's pages: Streamlit scripts that ``app.py`` runs by path (never imported)."""
