"""Small rules every layer shares, free of the reactor: errors, log observers and pseudonyms,
random bytes, private paths, atomic files, the peer-credential check, terminal-safe text, the
summary colour and the order of message states."""
