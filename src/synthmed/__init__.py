"""synthmed: do synthetic diffusion images improve a medical-image classifier, and by how much?"""

__version__ = "0.1.0"
