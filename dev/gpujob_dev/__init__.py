"""gpujob's development tools, not part of the gpujob package: the test and demo assets (Whisper base
converted from its CTranslate2 package, a tiny random Whisper, synthesized Greek speech) and the
runner benchmark. ``make install`` installs it (editable) beside gpujob; pytest finds it through
``pythonpath = ["dev"]``.
"""
