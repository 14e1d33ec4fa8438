"""ollama Modelfiles, model store and registry (issue 2; nothing here yet)."""
