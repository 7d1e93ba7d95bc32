"""Configuration: the schema of whole options files (:mod:`.schema`), the checks run before anything is
written (:mod:`.checks`), options files and paths (:mod:`.files`), and the generated options reference
(:mod:`.reference`). Options themselves are declared with :mod:`acla_basicsr.option_spec`."""
