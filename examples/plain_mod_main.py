"""A module written as a plain mod_main() function, without BrokerModule.

    flux module load examples/plain_mod_main.py hello world
    flux python -c 'import flux; print(flux.Flux().rpc("plain_mod_main.args").get())'   # ['hello', 'world']
"""


def mod_main(h, *args):
    def on_args(h, watcher, msg, arg):
        h.respond(msg, list(args))

    watcher = h.msg_watcher_create(on_args, 1, "plain_mod_main.args")
    watcher.start()
    h.reactor_run()
