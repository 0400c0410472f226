"""
Helpers shared by the test modules, imported as C{tests.support.<module>} (so
they work under every pytest import mode, C{--import-mode=importlib} included):
C{fixtures} (recorded MCMP exchanges), C{tomcat} (real Tomcat nodes, free
loopback ports), C{proxy_testlib} (in-memory data-plane harness and HTTP
parsers), C{balancer_testlib}, C{console_helpers}, C{node_testlib}.
"""
