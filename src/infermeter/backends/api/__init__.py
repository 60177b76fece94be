"""The wire client of the `openai` backend: what an OpenAI-compatible server answered, timed.

- client.py    async requests (streaming or not) with retries, timing every chunk; a response
               counts only on evidence
- http.py      the HTTP/1.1 client under it
- outcome.py   how an API run ended (counts by cause, exit code)
"""
