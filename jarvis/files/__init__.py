"""Files on disk for file transfer: hashing and reading on the sending side, safe receiving.

Every function in this package blocks on the file system: call it off the reactor thread.
"""
