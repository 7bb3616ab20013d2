"""`uti demo`: the whole path on built-in sample data in the real layouts, in one command."""
