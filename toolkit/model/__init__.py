"""The model: a timm backbone (``backbone``) with the component switches (``components``) and a head (``heads``),
trained by ``classifier.ImageClassifier``; freezing, schedules, metrics, the converged probe and the cached-feature
path. ``classifier`` and ``features`` are the Lightning side; the rest is plain torch/timm.
"""
