__version__ = "0.1.0"
USER_AGENT = f"smarterbot-notifier/{__version__}"
