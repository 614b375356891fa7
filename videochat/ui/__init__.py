"""The only subpackage that imports Streamlit."""
