"""What the three servers (the bridge, the gateway, the image engine) share: the typed settings model, and
over HTTP the error tree and its JSON shape, bearer auth, body limits, request ids, field validation, OpenAPI
documents built from typed field tables, and the OpenAI chat protocol (request, reply shaping, SSE).

It imports none of the three packages, and Flask or aiohttp only in its adapter modules
(``flask_http``, ``aiohttp_http``), so a gateway never loads Flask and a bridge never loads aiohttp."""
