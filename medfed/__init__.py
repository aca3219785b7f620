"""medfed's command line: ``medfed`` parses arguments and calls into the packages."""
