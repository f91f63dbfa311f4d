"""Contract fakes of downstream APIs: small aiohttp servers that enforce each API's documented
rules (auth, required fields, limits, error bodies, partial-success answers) and record requests."""
