"""Where and when studies run: the Ray Train worker (``worker``), the Tune trial (``trial``), the
study runner (``runner``), its search space and samplers (``space``), resources, storage and the
one ``ray.init`` (``session``). Nothing outside ``dartboard.platform`` imports Ray."""
