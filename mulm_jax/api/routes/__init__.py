"""Route modules, one per concern; each exposes `routes(ctx: ApiContext) -> list[BaseRoute]`."""
