<%--
  Answers chunked with trailer fields (Servlet 4 setTrailerFields): body "hello world"
  (written and flushed in two pieces), trailers X-Echo-Node-Trailer: <jvmRoute>,
  Grpc-Status: ?status (default 0) and X-Got: the request's trailer fields as
  "name=value" joined with ";" ("-" when none; read after the whole body).
--%><%@ page session="false" isErrorPage="true" trimDirectiveWhitespaces="true"
    import="java.util.*,java.util.function.*" %><%@ include file="/WEB-INF/jspf/common.jspf" %><%
    tagResponse(response);
    java.io.InputStream in = request.getInputStream();
    byte[] buf = new byte[8192];
    while (in.read(buf) >= 0) { }
    StringBuilder got = new StringBuilder();
    if (request.isTrailerFieldsReady()) {
        for (Map.Entry<String, String> e : request.getTrailerFields().entrySet()) {
            if (got.length() > 0) got.append(';');
            got.append(e.getKey()).append('=').append(e.getValue());
        }
    }
    final String status = request.getParameter("status") == null ? "0" : request.getParameter("status");
    final String gotValue = got.length() == 0 ? "-" : got.toString();
    final String route = nodeRoute();
    response.setContentType("text/plain;charset=UTF-8");
    response.setTrailerFields(() -> {
        Map<String, String> t = new LinkedHashMap<>();
        t.put("X-Echo-Node-Trailer", route);
        t.put("Grpc-Status", status);
        t.put("X-Got", gotValue);
        return t;
    });
    java.io.OutputStream os = response.getOutputStream();
    os.write("hello".getBytes(java.nio.charset.StandardCharsets.US_ASCII));
    os.flush();
    os.write(" world".getBytes(java.nio.charset.StandardCharsets.US_ASCII));
%>
