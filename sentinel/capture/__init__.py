"""Turning what the proxy saw (an `Exchange`) into an `Interaction`, off the request path."""
