"""Synapse's own route table, and every spelling of each route.

Run with Synapse's Python and the test Synapse's homeserver.yaml:

    python routes.py homeserver.yaml > samples.json

Synapse registers its servlets through `register_servlets(hs, http_server)`
functions, which call `http_server.register_paths(method, patterns, ...)`
with the regexes `client_patterns()` builds (every version alternative,
`api/v1` included). This script calls those same functions — the ones
Synapse's listeners call for the `client` and `federation` resources and the
media repository — with the real parsed config (so config-dependent servlets
are the ones the test server serves) and a recorder in place of the HTTP
server. It then writes, for every registered route, every path its regex can
spell (each alternative, optional group present and absent, captures given a
sample value and, where the regex allows it, the empty string), plus a few
spellings the regex does not allow (a trailing or doubled slash), and for
each one what Synapse's router would do with it: the same first-match walk as
`JsonResource._get_handler_for_request` (HEAD served as GET; a matching path
without the method is 405).

Output (JSON): {"samples": [{"method", "path", "mount" | null, "servlet" | null,
"groups": {...}, "served": bool}], "servlets": [names]}.
"""

import itertools
import json
import re
import sys
from unittest.mock import MagicMock

try:  # Python 3.11+
    import re._parser as sre_parse
    from re._constants import (
        ANY, AT, BRANCH, IN, LITERAL, MAX_REPEAT, MIN_REPEAT, NEGATE, NOT_LITERAL,
        SUBPATTERN, CATEGORY,
    )
except ImportError:  # pragma: no cover - older Pythons
    import sre_parse  # type: ignore
    from sre_constants import (  # type: ignore
        ANY, AT, BRANCH, IN, LITERAL, MAX_REPEAT, MIN_REPEAT, NEGATE, NOT_LITERAL,
        SUBPATTERN, CATEGORY,
    )

from synapse.config.homeserver import HomeServerConfig
import synapse.rest as rest
from synapse.rest import admin as synapse_admin
from synapse.rest.client import media as client_media
from synapse.rest.media.media_repository_resource import MediaRepositoryResource
from synapse.federation.transport.server import register_servlets as federation_servlets


class Recorder:
    """Stands in for a JsonResource: keeps `_routes` as Synapse does."""

    def __init__(self):
        # pattern string -> {method: servlet name}, in registration order
        # (JsonResource keys its dict by the compiled pattern, which `re`
        # caches, so equal strings share one entry; a later registration of
        # the same method replaces the earlier one).
        self.routes = {}

    def register_paths(self, method, patterns, callback, servlet_classname):
        for p in patterns:
            self.routes.setdefault(p.pattern, {})[method] = servlet_classname

    def route(self, method, path):
        """JsonResource._get_handler_for_request."""
        if method == "HEAD":
            method = "GET"
        for pattern, methods in self.routes.items():
            m = re.match(pattern, path)
            if m:
                servlet = methods.get(method)
                if servlet is None:
                    return None, {}, 405
                return servlet, {k: v for k, v in m.groupdict().items() if v is not None}, 200
        return None, {}, 404


# Sample values by capture name: real-looking ones, so the request reaches
# the servlet (and the server's own name, so nothing is fetched remotely).
SAMPLE = {
    "room_id": "!r:localhost",
    "room_identifier": "!r:localhost",
    "room_alias": "%23a:localhost",
    "event_id": "$e",
    "parent_id": "$e",
    "thread_root_id": "$e",
    "user_id": "@u:localhost",
    "target_user_id": "@u:localhost",
    "server_name": "localhost",
    "media_id": "m1",
    "txn_id": "t1",
    "transaction_id": "t1",
}


def spell(items, name=None):
    """Every string a parsed regex (a subset: what route regexes use) spells.

    Yields strings; a capture yields its sample value and, when the regex
    lets it be empty, "" as well.
    """
    out = [""]
    for op, av in items:
        if op == AT:
            options = [""]
        elif op == LITERAL:
            options = [chr(av)]
        elif op == SUBPATTERN:
            group, _add, _del, sub = av
            gname = None
            for n, i in PARSED.state.groupdict.items():
                if i == group:
                    gname = n
            options = list(dict.fromkeys(spell(sub, gname)))
        elif op == BRANCH:
            _, branches = av
            options = []
            for b in branches:
                options.extend(spell(b, name))
            options = list(dict.fromkeys(options))
        elif op in (MAX_REPEAT, MIN_REPEAT):
            lo, hi, sub = av
            simple = all(o in (IN, ANY, NOT_LITERAL, LITERAL) for o, _ in sub)
            if simple:
                # A character class repeated: the capture's value.
                value = SAMPLE.get(name or "", "x")
                options = []
                if lo == 0:
                    options.append("")
                options.append(value)
                if hi == 1 and lo == 0 and len(sub) == 1 and sub[0][0] == LITERAL:
                    options = ["", chr(sub[0][1])]
            else:
                # An optional group: absent, and present once.
                once = list(spell(sub, name))
                options = ([""] if lo == 0 else []) + once
        elif op == IN:
            # A class of literals (`v[13]`, as the parser folds `v1|v3`):
            # each; a negated or category class: one character it allows.
            if all(o == LITERAL for o, _ in av):
                options = [chr(c) for _, c in av]
            else:
                options = ["x"]
        elif op in (ANY, NOT_LITERAL):
            options = ["x"]
        else:
            raise ValueError(f"regex element {op} not handled")
        out = [a + b for a in out for b in options]
    return out


def samples(recorder, pattern, methods):
    global PARSED
    PARSED = sre_parse.parse(pattern)
    paths = set(spell(list(PARSED)))
    for path in sorted(paths):
        for method in sorted(set(methods) | ({"HEAD"} if "GET" in methods else set())):
            yield method, path
            # Spellings the regex does not allow: Synapse's router must
            # refuse them (the live test checks the emulation agrees).
        if not path.endswith("/"):
            yield sorted(methods)[0], path + "/"
        yield sorted(methods)[0], path.replace("/_matrix/", "/_matrix//", 1)
    # A method the route does not serve.
    if "DELETE" not in methods:
        for path in sorted(paths)[:1]:
            yield "DELETE", path


def main():
    config = HomeServerConfig.load_config("", ["-c", sys.argv[1]])
    hs = MagicMock()
    hs.config = config
    hs.hostname = config.server.server_name
    # The resources of a main-process listener with `client` and
    # `federation` (synapse/app/homeserver.py), by the prefix each is
    # mounted at.
    client, media, federation = Recorder(), Recorder(), Recorder()
    rest.ClientRestResource.register_servlets(client, hs, ["client"])
    if config.media.can_load_media_repo:
        client_media.register_servlets(hs, client)
        MediaRepositoryResource.register_servlets(media, hs)
    federation_servlets(hs, federation, MagicMock(), MagicMock())
    # The client listener also mounts the admin API (every admin servlet;
    # a few are registered on the client resource as well).
    admin = Recorder()
    synapse_admin.register_servlets(hs, admin)
    mounts = [
        ("/_synapse/admin", admin),
        ("/_matrix/client", client),
        ("/_matrix/media/r0", media),
        ("/_matrix/media/v3", media),
        ("/_matrix/media/v1", media),
        ("/_matrix/federation", federation),
    ]

    def route(method, path):
        for prefix, recorder in mounts:
            if path.startswith(prefix + "/"):
                return (prefix,) + recorder.route(method, path)
        return None, None, {}, 404

    out, seen, servlets = [], set(), set()
    for recorder in (client, media, federation, admin):
        for pattern, methods in recorder.routes.items():
            servlets.update(methods.values())
            for method, path in samples(recorder, pattern, methods):
                if (method, path) in seen:
                    continue
                seen.add((method, path))
                mount, servlet, groups, status = route(method, path)
                out.append({
                    "method": method,
                    "path": path,
                    "mount": mount,
                    "servlet": servlet,
                    "groups": groups,
                    "served": status == 200,
                })
    json.dump({"samples": out, "servlets": sorted(servlets)}, sys.stdout)


PARSED = None
if __name__ == "__main__":
    main()
