"""Shared maths of methods and metrics, below both: the explained scalar
(:mod:`.objectives`), image operations (:mod:`.imageops`), information measures and CP ratios
(:mod:`.information`), and the StartGrad faithfulness curves (:mod:`.faithfulness`)."""
