"""slotcurri_jax: SlotCurri, SlotContrast and SSync video object-centric learning in JAX/Flax."""
__version__ = '0.1.0'
