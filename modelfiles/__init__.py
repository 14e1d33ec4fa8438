"""ollama packaging: Modelfiles (generate, parse, check), the ollama model store, and their commands."""
