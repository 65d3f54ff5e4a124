"""Route modules: thin functions that parse a request, call a service, render or serialise the result."""
