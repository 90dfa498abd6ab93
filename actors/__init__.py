"""Ray actors: each a plain class tested directly plus a thin ray.remote shell; provider clients
in providers/."""
