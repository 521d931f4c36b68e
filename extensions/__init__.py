"""Extensions: they import the core (the top-level files); the core never imports them.

Run each as a module from the repository's root, e.g. `python -m extensions.autoencoder --help`.
"""
