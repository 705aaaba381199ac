"""Studies: the Compressing BERT experiment grid as one resumable, distributable run with its report."""
