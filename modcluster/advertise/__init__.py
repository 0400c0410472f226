"""
Multicast advertise (httpd's mod_advertise), in two layers as in L{twisted.names}:
L{modcluster.advertise.codec} (pure: digest, datagrams, directive parsers) and
L{modcluster.advertise.service} (the L{Advertiser} service).
"""
