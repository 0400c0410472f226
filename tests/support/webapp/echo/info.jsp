<%--
  Echo of the request as Tomcat sees it (JSON). Any method is accepted: isErrorPage="true"
  turns off Jasper's GET/POST/HEAD-only check. A request body (if announced by
  Content-Length > 0 or Transfer-Encoding) is read and summarised, else "body" is null.
--%><%@ page session="false" isErrorPage="true" trimDirectiveWhitespaces="true"
    import="java.util.*" %><%@ include file="/WEB-INF/jspf/common.jspf" %><%
    tagResponse(response);
    // Read the body only when the request announces one (Content-Length or
    // Transfer-Encoding), so a body-less AJP request never triggers GET_BODY_CHUNK.
    Map<String, Object> body = null;
    if (request.getContentLengthLong() > 0 || request.getHeader("Transfer-Encoding") != null) {
        body = consumeBody(request, 65536, 0);
    }

    List<String[]> headers = new ArrayList<>();
    for (Enumeration<String> names = request.getHeaderNames(); names.hasMoreElements();) {
        String name = names.nextElement();
        for (Enumeration<String> values = request.getHeaders(name); values.hasMoreElements();) {
            headers.add(new String[] {name, values.nextElement()});
        }
    }
    List<String[]> cookies = new ArrayList<>();
    if (request.getCookies() != null) {
        for (jakarta.servlet.http.Cookie c : request.getCookies()) {
            cookies.add(new String[] {c.getName(), c.getValue()});
        }
    }
    Map<String, Object> attributes = new TreeMap<>();
    for (Enumeration<String> names = request.getAttributeNames(); names.hasMoreElements();) {
        String name = names.nextElement();
        Object value = request.getAttribute(name);
        attributes.put(name, value instanceof Object[] ? Arrays.toString((Object[]) value) : String.valueOf(value));
    }
    jakarta.servlet.http.HttpSession existing = request.getSession(false);

    Map<String, Object> r = new LinkedHashMap<>();
    r.put("node", nodeRoute());
    r.put("method", request.getMethod());
    r.put("requestURI", request.getRequestURI());
    r.put("queryString", request.getQueryString());
    r.put("protocol", request.getProtocol());
    r.put("scheme", request.getScheme());
    r.put("isSecure", request.isSecure());
    r.put("serverName", request.getServerName());
    r.put("serverPort", request.getServerPort());
    r.put("localAddr", request.getLocalAddr());
    r.put("localPort", request.getLocalPort());
    r.put("remoteAddr", request.getRemoteAddr());
    r.put("remotePort", request.getRemotePort());
    r.put("remoteUser", request.getRemoteUser());
    r.put("authType", request.getAuthType());
    r.put("contextPath", request.getContextPath());
    r.put("servletPath", request.getServletPath());
    r.put("pathInfo", request.getPathInfo());
    r.put("contentType", request.getContentType());
    r.put("contentLength", request.getContentLengthLong());
    r.put("headers", headers);
    r.put("cookies", cookies);
    r.put("attributes", attributes);
    r.put("jvmRouteAttribute", request.getAttribute("jvm_route") == null ? null : String.valueOf(request.getAttribute("jvm_route")));
    r.put("requestedSessionId", request.getRequestedSessionId());
    r.put("requestedSessionIdValid", request.getRequestedSessionId() != null && request.isRequestedSessionIdValid());
    r.put("sessionId", existing == null ? null : existing.getId());
    r.put("body", body);
    sendJson(response, r);
%>
