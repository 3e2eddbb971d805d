"""The toy world's rewards (registered by :mod:`parauni.toy.plugin` as ``toy_alignment``, ``toy_geneval``
and ``toy_quality``)."""
