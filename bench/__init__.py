"""bench: measure the robustness of image classifiers behind adversarial purification defenses."""

__version__ = "0.1.0"
