"""Embedding models, one module per modality, behind one ``Encoder`` interface (see ``base``)."""
