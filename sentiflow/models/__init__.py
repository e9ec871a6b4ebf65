"""The model lifecycle: the classifier, its artifacts, the registry that keeps every
version (filesystem or S3), and the model.versions topic that announces them.

The trainer writes versions; inference, the console and the command line read them.
All of them locate the registry from one settings section, ``RegistrySettings``.
"""
