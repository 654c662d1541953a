"""The default English->Spanish corpus (public-domain Bibles) and the script that builds it."""
