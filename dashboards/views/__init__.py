"""The dashboard's pages, one module each; Streamlit runs each file as the page's script."""
