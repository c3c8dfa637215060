"""Delivery providers: what a message is, how a send turns out, and the real SDK-backed senders.

Import from the submodules (`messages`, `errors`, `factory`, ...). This package imports nothing itself,
so code that only needs the message types does not pay for loading the SendGrid and Firebase SDKs.
"""
