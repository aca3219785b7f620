"""The Streamlit dashboard over run directories (issue 6); it reads evidence.json and
computes nothing that `validation` could."""
