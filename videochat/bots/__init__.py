"""Bot participants hosted in the app process and their commands."""
