"""Registry fixtures (being written): a real docker-registry on 127.0.0.1."""
