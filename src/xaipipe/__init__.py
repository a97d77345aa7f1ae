"""xaipipe: regenerate saliency-method papers from raw images to final figures."""
__version__ = "0.1.0"
