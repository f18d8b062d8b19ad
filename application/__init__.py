"""What the service does, without HTTP: submit a job, admit an inference or generation request,
read adapters from the artifact store, build the serving engine from the settings.

The API's routes translate a protocol to one call here and back; the worker and the CLI use it
too. It sits on `service` (persistence) and `adalora_core` (the library) and never imports `api`.
"""
