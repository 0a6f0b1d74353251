"""exo_rk: RK3588/RK3576 boards as exo inference engines, a bridge pool and an OpenAI gateway."""

__version__ = "0.1.0"
