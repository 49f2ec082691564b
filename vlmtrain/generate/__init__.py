"""See what a trained run answers: ``vlmtrain generate`` and ``vlmtrain merge``.

Prompts go through the very render path training used (the run's config, family and chat template with the
generation prompt the masks assume), so what is checked is what was trained.
"""
