"""A planted pickle payload for the tests that check files from users are never unpickled freely."""

import io


class Plant:
    "Unpickles by calling `io.open(path, 'w')`: a file that appears is code that ran."

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (io.open, (self.path, "w"))
