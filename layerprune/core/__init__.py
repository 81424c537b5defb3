"""The ML of layerprune: load, score layers, remove them, heal, evaluate, export.

Nothing here imports fastapi, sqlalchemy, celery, ``layerprune.api`` or ``layerprune.worker``;
``tests/test_layering.py`` enforces it. Every module can be used from a notebook or a script.
"""
