"""A faithful Agora simulator: the REST API and the NCS webhooks of Agora's ConvoAI, no account.

Used by the tests, the benchmarks and `make demo` (`convoai-ledger simulate`). Its behaviour
follows `shared/reference/agora-convoai.md`; where Agora's docs are silent it does what they imply.

    backend.py   the agents of each app and every rule Agora applies (PCU cap, list defaults,
                 history only while RUNNING, turns pagination), plus fault injection and a call log
    api.py       the REST API over the backend (starlette): join, leave, query, list, history,
                 turns, with Basic or `agora token=` auth and `{detail, reason}` error bodies
    ncs.py       the NCS sender: signed deliveries, retries (immediately, then growing gaps, three
                 retries at most), optional duplicates, shuffling and drops
    sessions.py  simulated sessions: start, talk (110/111), stop (102, 103, 112)
    server.py    the REST API on uvicorn, in the current loop or in a background thread
    command.py   `convoai-ledger simulate`
"""
