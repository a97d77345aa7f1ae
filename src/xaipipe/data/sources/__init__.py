"""The data set kinds, one module each; each registers its :class:`~.base.Source` subclass in
:data:`~.base.DATASETS`, which imports every module here the first time it is used."""
