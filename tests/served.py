"""A WSGI app behind a real threaded server, and browsers to drive it."""

import http.cookiejar
import json
import threading
import time
import urllib.error
import urllib.request

import waitress


class Served:
    """A WSGI app behind a real waitress server on loopback, in a thread."""

    def __init__(self, app, threads=8):
        self.server = waitress.create_server(app, host="127.0.0.1", port=0, threads=threads)
        self.url = f"http://127.0.0.1:{self.server.effective_port}"
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.server.run()
        except OSError:  # close() from the test thread ends the select loop this way
            pass

    def close(self):
        self.server.close()


class Client:
    """One browser: its own cookie jar; records each response's status and time."""

    def __init__(self, url):
        self.url = url
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )
        self.log = []  # (started, seconds, status, n or None)

    def get(self, path):
        started = time.monotonic()
        try:
            with self.opener.open(self.url + path, timeout=30) as response:
                status, n = response.status, json.loads(response.read())["n"]
        except urllib.error.HTTPError as error:
            status, n = error.code, None
        self.log.append((started, time.monotonic() - started, status, n))
        return status, n


class Browser:
    """One browser: one cookie jar, shared by every request it sends (also
    concurrent ones, as a page's XHRs); responses update it in the order they
    arrive, as a browser's do."""

    def __init__(self, url):
        self.url = url
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, path):
        """(status, the JSON body, the Set-Cookie headers)."""
        try:
            with self.opener.open(self.url + path, timeout=30) as response:
                return (
                    response.status,
                    json.loads(response.read()),
                    response.headers.get_all("Set-Cookie") or [],
                )
        except urllib.error.HTTPError as error:
            return error.code, None, error.headers.get_all("Set-Cookie") or []

    def cookie(self, name="session"):
        return next((cookie.value for cookie in self.jar if cookie.name == name), None)

    def at_once(self, *paths):
        """Send the requests together, each in a thread; their results, in order."""
        results = [None] * len(paths)

        def send(i):
            results[i] = self.get(paths[i])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(paths))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        return results
