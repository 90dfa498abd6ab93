"""The Ray Serve application: the gateway (HTTP/SSE API and handle API), one deployment per
agent version, the deploy-config schema, errors as HTTP, the provider simulator and the CLI.
"""
