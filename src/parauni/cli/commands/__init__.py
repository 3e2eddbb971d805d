"""One module per command of ``parauni``, in the order ``parauni --help`` lists them. Each has
``add_parser(subparsers)``, which adds the command's parser with its options and help, and ``run(args)``, which
runs it (importing the library it needs there, not when the parser is built)."""
